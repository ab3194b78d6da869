"""synctalk: a configuration-driven platform for SyncTalk-style audio-driven talking heads."""

__version__ = "0.1.0"
