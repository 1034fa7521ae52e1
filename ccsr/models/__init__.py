"""Model building and loading: the CCSR ControlNet and the release-layout loader."""
