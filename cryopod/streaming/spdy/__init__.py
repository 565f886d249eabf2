"""SPDY/3.1 as the kubelet's streaming protocols use it: frames, header compression, sessions."""
