"""The OpenAPI 3.1 document: the builder (document), what every operation shares
(conventions) and the operations table by area (catalog, orders, dashboard)."""
