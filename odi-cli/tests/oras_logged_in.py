"""A pytest plugin for oras's own suite: every `oras.provider.Registry` starts with the
credentials in ODI_ORAS_USER / ODI_ORAS_PASS, as a user's does after `oras login`.

The suite's OCI-layout tests build a bare `Registry(insecure=True)` and push with it, which
only works against a registry that takes anonymous pushes; a directory takes pushes only with
its admin token, so these tests run as a logged-in user instead of being left out.
"""

import os

import oras.provider

_init = oras.provider.Registry.__init__


def _logged_in(self, *args, **kwargs):
    _init(self, *args, **kwargs)
    self.auth.set_basic_auth(os.environ["ODI_ORAS_USER"], os.environ["ODI_ORAS_PASS"])


oras.provider.Registry.__init__ = _logged_in
