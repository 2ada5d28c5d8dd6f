"""gpt-oss-hf-server: an OpenAI-compatible GPT-OSS server shaped as a supervised actor process tree."""
