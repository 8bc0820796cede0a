"""Pure translation between the dialects (OpenAI, Anthropic) and the gateway's own shapes."""
