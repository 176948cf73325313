"""The workbook's machinery: where files live, configurations and their hashes, cached stages,
parameter profiles, the notebook runner and the report.

It builds on the method (``flexrel_core``'s top level) and knows nothing of the paper's items
(``flexrel_core.paper``), which build on it.
"""
