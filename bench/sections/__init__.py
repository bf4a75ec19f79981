"""The sections of ``docs/performance.md`` that ``bench.report`` renders itself, one module each.

``cells`` formats numbers, ratios and Markdown tables for all of them;
``headlines`` is the page's summary bullets. The benchmarks added later render
their own section (``report_section`` in ``bench/<name>.py``).
"""
