"""Command-line front door of bilayer-mobile."""
