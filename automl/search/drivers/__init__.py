"""Search drivers: each translates the space and schedules trials; the trial itself is shared."""
