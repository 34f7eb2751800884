"""The asyncio data plane: HTTP/1.1 and TCP proxying."""
