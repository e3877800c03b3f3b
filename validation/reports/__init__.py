"""Reports: the typed record of each kind (`types`, `record`), the kind registry (`kinds`: class, pages, figures),
writing a report set (`write`: JSON, Markdown, HTML and figures), the blocks of each kind's pages, the documents
they render into, and the figures."""
