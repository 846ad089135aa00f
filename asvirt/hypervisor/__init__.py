"""What every hypervisor driver shares: the node, its domain table, the domain calls, policy.

Drivers supply only what differs between hypervisors (how a guest is started, paused, stopped;
where definitions are kept); everything users' code can observe — clashes, wrong states,
events, their numbers — is decided here, once.
"""
