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


class Topics:
    def __init__(self, site):
        self.site = site
        self.base = "%s/%s" % (ROOT, site)
        self.bridge = self.base + "/bridge"
        self.commands = self.base + "/cmd/+"
        self.confirms = self.base + "/confirm/+"

    def status(self, pile):
        return "%s/pile/%s/status" % (self.base, pile)

    def realtime(self, pile):
        return "%s/pile/%s/realtime" % (self.base, pile)

    def bills(self, pile):
        return "%s/bills/%s" % (self.base, pile)

    def confirm(self, pile):
        return "%s/confirm/%s" % (self.base, pile)

    def events(self, pile):
        return "%s/events/%s" % (self.base, pile)

    def command(self, pile):
        return "%s/cmd/%s" % (self.base, pile)

    def result(self, pile):
        return "%s/result/%s" % (self.base, pile)

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
