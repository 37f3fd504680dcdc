"""usertunnel: GRE (RFC 2784/2890) and IPIP (RFC 2003) tunnels in userspace, over a Linux TUN device."""

__version__ = "0.1.0"
