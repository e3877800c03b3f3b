"""Reports: writing a report set (`write`: JSON, Markdown, HTML and figures), the blocks of each kind's pages, the
documents they render into, and the figures."""
