"""The HTTP surface of ladle: protocol adapters (KServe V2, the ladle API) over starlette."""
