"""The contention monitor: detects contention from telemetry, scales tenant clusters
down and back up, and keeps their task slots matched to the CPU their workers get."""
