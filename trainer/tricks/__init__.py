"""One module per trick group, mirroring conf/: each builds a strategy object (an "off" choice
builds a no-op) that the loop uses without asking whether the trick is on."""
