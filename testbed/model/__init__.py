"""The experiment model: schema (layer 1), meaning (layer 2), and loading from files.

    load_experiment(path) -> Experiment    both layers; files it names are read here

Nothing here touches the machine: images, the kernel and the daemon are preflight's.
"""
from testbed.model.fields import (
                                  NO_IMPAIRMENT,
                                  DirDuration,
                                  Directions,
                                  DirPercent,
                                  Duration,
                                  Percent,
                                  Rate,
                                  Size,
                                  Strict,
)
from testbed.model.load import (
                                  link_profiles,
                                  load_experiment,
                                  load_topology,
                                  parse_experiment,
                                  resolved_yaml,
)
from testbed.model.schema import (
                                  AccessLink,
                                  Behaviour,
                                  Content,
                                  CoreLink,
                                  DataPlan,
                                  Experiment,
                                  LinkProfile,
                                  PeerGroup,
                                  RateStep,
                                  SeedFor,
                                  SeedUntilRatio,
                                  Throttle,
                                  Topology,
                                  Tracker,
)

__all__ = ["NO_IMPAIRMENT", "Directions", "DirDuration", "DirPercent", "Duration", "Percent", "Rate", "Size",
           "Strict", "link_profiles", "load_experiment", "load_topology", "parse_experiment", "resolved_yaml",
           "AccessLink", "Behaviour", "Content", "CoreLink", "DataPlan", "Experiment", "LinkProfile", "PeerGroup",
           "RateStep", "SeedFor", "SeedUntilRatio", "Throttle", "Topology", "Tracker"]
