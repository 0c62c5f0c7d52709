"""The plan of one run: pure, seeded and complete (hosts, links, addresses, rates, and a
timeline of events). It reads no file and touches nothing; executors carry it out.

    plan(experiment, run_id, repetition=1) -> Plan
"""
from testbed.plan.build import (CONTROL_BLOCKS, CONTROL_NET, DATA_NET, HostPlan, LinkPlan, Plan, Shaping,
                                SwitchPlan, access_shaping, control_block, piece_size, plan, run_tag)
from testbed.plan.timeline import TIMELINE_FIELDS, Event, Participant

__all__ = ["CONTROL_BLOCKS", "CONTROL_NET", "DATA_NET", "HostPlan", "LinkPlan", "Plan", "Shaping", "SwitchPlan",
           "access_shaping", "control_block", "piece_size", "plan", "run_tag", "TIMELINE_FIELDS", "Event",
           "Participant"]
