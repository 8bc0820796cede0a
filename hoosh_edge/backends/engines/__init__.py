"""On-device engines: llama.cpp chat, whisper.cpp speech-to-text, Piper text-to-speech."""
