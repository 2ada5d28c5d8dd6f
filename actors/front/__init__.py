"""front actor: aiohttp serving the OpenAI API, /health and /admin; owns tokenization and the protocol."""
