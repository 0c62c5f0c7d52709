"""Analysis: metrics of runs, statistics over repetitions, comparisons and report pages.

It reads results directories only (summary.json, samples, meters, study.json) and imports
nothing that acts on the machine: a study copied to a laptop reports there the same.
"""
