"""One module per item of the paper, named like its notebook: ``fig1``, ``fig2``, ``fig3`` (with the
``federated`` simulator it runs), ``fig4``, ``table1`` and the interactive ``explore``r.

Each exposes the same verbs -- ``compute`` (the numbers, cached), ``plot`` (a figure drawn from
saved numbers) and ``report`` (its section of ``REPORT.md``) -- and draws with ``style``.
"""
