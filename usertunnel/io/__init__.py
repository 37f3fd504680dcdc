"""The I/O shell: moves bytes between the kernel (TUN, raw sockets, netlink) and the core.

Nothing in here decides what goes on the wire; that is `usertunnel.core`'s job.
"""
