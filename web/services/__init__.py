"""The service layer: one module per area holds its use cases (what a request does, with
its checks and its compensation), callable without HTTP. A route parses, calls one function
here and shapes the answer. The clients they use come in a `Services` (container.py)."""
