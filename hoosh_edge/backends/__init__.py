"""What answers: on-device engines (llama.cpp, whisper.cpp, Piper) and cloud or LAN providers."""
