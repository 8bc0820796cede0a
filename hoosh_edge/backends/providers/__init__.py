"""Cloud and LAN providers: OpenAI-compatible APIs and Anthropic."""
