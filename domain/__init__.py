"""The business: jobs, their rules and the ports they need. Imports nothing of ours and no framework."""
