# The MQTT topic tree of one site (docs/mqtt.md). Everything lives under
# pc/<site>/ so one ACL line (pc/<site>/#) gives a site's bridge its topics.
#
#   pc/<site>/bridge                   retained  bridge status; last will = offline
#   pc/<site>/pile/<pile>/status       retained  pile status (online, link, versions, guns)
#   pc/<site>/pile/<pile>/realtime     QoS 0     0x13 realtime data, one message per frame
#   pc/<site>/bills/<pile>             QoS 1     bills, until confirmed (shareable: $share/...)
#   pc/<site>/confirm/<pile>           QoS 1     platform -> bridge: bill confirmations
#   pc/<site>/events/<pile>            QoS 1     events; <pile> = "bridge" for the bridge's own
#   pc/<site>/cmd/<pile>               QoS 1     platform -> bridge: commands; <pile> = "site"
#   pc/<site>/result/<pile>            QoS 1     one result per command
#
# Pile codes are 14 digits, so the words "bridge" and "site" never collide.

ROOT = "pc"
SITE_TARGET = "site"
BRIDGE_SOURCE = "bridge"


def _per_pile(path):
    # A method topic(pile) -> pc/<site>/<path with the pile's code>.
    def topic(self, pile):
        return "%s/%s" % (self.base, path % pile)
    return topic


class Topics:
    # The per-pile topics of the tree above, one line each.
    status = _per_pile("pile/%s/status")
    realtime = _per_pile("pile/%s/realtime")
    bills = _per_pile("bills/%s")
    confirm = _per_pile("confirm/%s")
    events = _per_pile("events/%s")
    command = _per_pile("cmd/%s")
    result = _per_pile("result/%s")

    def __init__(self, site):
        self.site = site
        self.base = "%s/%s" % (ROOT, site)
        self.bridge = self.base + "/bridge"
        self.commands = self.base + "/cmd/+"
        self.confirms = self.base + "/confirm/+"

    def parse(self, topic):
        """(kind, pile) for a topic under this site, e.g. ("cmd", "550..."),
        or (None, None)."""
        parts = topic.split("/")
        if len(parts) != 4 or parts[0] != ROOT or parts[1] != self.site:
            return None, None
        return parts[2], parts[3]


def shared_bills(group, site="+"):
    """The subscription a platform instance uses to share the bill stream
    with its peers: every bill goes to one member of `group`."""
    return "$share/%s/%s/%s/bills/+" % (group, ROOT, site)
