"""The programs the DDP tests start; the tests also import what those programs build on one device."""
