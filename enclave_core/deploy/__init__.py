"""What only the CLI runs against AWS: build, deploy, destroy and their tools."""
