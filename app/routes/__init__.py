"""One router per feature: search, embed, rerank, status, admin, web page."""
