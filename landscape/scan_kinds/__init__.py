"""One module per scan kind: the computing half of each entry of
:data:`common.names.SCAN_KINDS` (whose ``runner`` names the module), on the common interface of
:class:`landscape.scan_kinds.base.KindRunner`. Steps to add a kind: ``docs/design.md``."""
