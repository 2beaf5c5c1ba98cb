package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"sort"
	"strconv"
	"strings"

	"github.com/erlmcp/erlmcp/controlplane"
)

// dnsRegion is one region's part of the DNS plan.
type dnsRegion struct {
	Name   string
	State  string
	Weight int      // weight in a weighted record set; 0 sends no traffic
	Hosts  []string // the region's healthy fronts, without ports
	Skip   string   // why the region has no records ("" when it has)
}

// planDNS decides which fronts clients should reach. Only healthy front
// members count; a region's weight is its configured weight (at least 1)
// while active and 0 otherwise, so a standby or failed region keeps its
// records (ready for a failover) but gets no traffic.
func planDNS(regions []controlplane.RegionDoc, members []controlplane.MemberStatus) []dnsRegion {
	fronts := map[string][]string{}
	for _, m := range members {
		if m.Role != "front" || !m.Healthy {
			continue
		}
		host := m.Addr
		if h, _, err := net.SplitHostPort(m.Addr); err == nil {
			host = h
		}
		if host == "" || host == "0.0.0.0" || host == "::" {
			continue // listening on every address: nothing a client can dial
		}
		fronts[m.Region] = append(fronts[m.Region], host)
	}
	var out []dnsRegion
	for _, r := range regions {
		d := dnsRegion{Name: r.Name, State: r.State, Hosts: fronts[r.Name]}
		sort.Strings(d.Hosts)
		if r.State == "active" {
			d.Weight = max(r.Weight, 1)
		}
		switch {
		case len(d.Hosts) == 0:
			d.Skip = "no healthy front in this region"
		case len(d.Hosts) > 1 && !allIPs(d.Hosts):
			d.Skip = "several fronts and some are host names: a CNAME takes one target"
		}
		out = append(out, d)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

func allIPs(hosts []string) bool {
	for _, h := range hosts {
		if net.ParseIP(h) == nil {
			return false
		}
	}
	return true
}

// recordType is A, AAAA or CNAME for a region's hosts (planDNS made sure a
// CNAME has one target).
func recordType(hosts []string) string {
	if ip := net.ParseIP(hosts[0]); ip != nil {
		if ip.To4() != nil {
			return "A"
		}
		return "AAAA"
	}
	return "CNAME"
}

func fqdn(name string) string {
	if strings.HasSuffix(name, ".") {
		return name
	}
	return name + "."
}

// writeZone writes a BIND zone fragment: <name> points at the active
// regions' fronts (zone files have no weights), and <region>.<name> at
// each region's fronts for direct access and drills.
func writeZone(w io.Writer, plan []dnsRegion, name string, ttl int) error {
	var b strings.Builder
	fmt.Fprintf(&b, "; erlmcp fronts for %s, from the cluster's region states. Ports are not\n; carried by DNS: clients use the fronts' port.\n", fqdn(name))
	active := 0
	for _, r := range plan {
		if r.Skip != "" {
			fmt.Fprintf(&b, "; %s (%s): skipped, %s\n", r.Name, r.State, r.Skip)
			continue
		}
		if r.Weight > 0 {
			active++
			for _, h := range r.Hosts {
				fmt.Fprintf(&b, "%s\t%d\tIN\t%s\t%s\n", fqdn(name), ttl, recordType(r.Hosts), target(h))
			}
		}
	}
	if active == 0 {
		b.WriteString("; no active region has a healthy front: no record for the name itself\n")
	}
	for _, r := range plan {
		if r.Skip != "" {
			continue
		}
		fmt.Fprintf(&b, "; %s: %s, weight %d\n", r.Name, r.State, r.Weight)
		for _, h := range r.Hosts {
			fmt.Fprintf(&b, "%s\t%d\tIN\t%s\t%s\n", fqdn(r.Name+"."+name), ttl, recordType(r.Hosts), target(h))
		}
	}
	_, err := io.WriteString(w, b.String())
	return err
}

func target(h string) string {
	if net.ParseIP(h) != nil {
		return h
	}
	return fqdn(h)
}

// route53Batch is the JSON of `aws route53 change-resource-record-sets
// --change-batch`.
type route53Batch struct {
	Comment string          `json:"Comment"`
	Changes []route53Change `json:"Changes"`
}

type route53Change struct {
	Action            string           `json:"Action"`
	ResourceRecordSet route53RecordSet `json:"ResourceRecordSet"`
}

type route53RecordSet struct {
	Name            string                  `json:"Name"`
	Type            string                  `json:"Type"`
	SetIdentifier   string                  `json:"SetIdentifier"`
	Weight          int                     `json:"Weight"`
	TTL             int                     `json:"TTL"`
	ResourceRecords []route53ResourceRecord `json:"ResourceRecords"`
}

type route53ResourceRecord struct {
	Value string `json:"Value"`
}

func writeRoute53(w io.Writer, plan []dnsRegion, name string, ttl int) error {
	batch := route53Batch{Comment: "erlmcp fronts for " + fqdn(name) + ", weighted by region state"}
	for _, r := range plan {
		if r.Skip != "" {
			continue
		}
		rs := route53RecordSet{Name: fqdn(name), Type: recordType(r.Hosts), SetIdentifier: r.Name, Weight: r.Weight, TTL: ttl}
		for _, h := range r.Hosts {
			rs.ResourceRecords = append(rs.ResourceRecords, route53ResourceRecord{Value: target(h)})
		}
		batch.Changes = append(batch.Changes, route53Change{Action: "UPSERT", ResourceRecordSet: rs})
	}
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(batch)
}

// ctlDNS reads regions and members from the admin API and writes records.
// args are zone|route53, the name and an optional ttl (checked by runCtl
// for count and format).
func ctlDNS(ctx context.Context, urls []string, token string, args []string, stdout io.Writer) error {
	format, name, ttl := args[0], args[1], 60
	if len(args) == 3 {
		n, err := strconv.Atoi(args[2])
		if err != nil || n < 1 || n > 86400 {
			return failf(exitUsage, "ttl %q: want seconds in 1..86400", args[2])
		}
		ttl = n
	}
	if strings.Trim(name, ".") == "" || strings.ContainsAny(name, " \t/") {
		return failf(exitUsage, "name %q is not a DNS name", name)
	}
	var rs []controlplane.RegionDoc
	if err := adminGet(ctx, urls, token, "/v1/regions", &rs); err != nil {
		return err
	}
	var ms []controlplane.MemberStatus
	if err := adminGet(ctx, urls, token, "/v1/members", &ms); err != nil {
		return err
	}
	plan := planDNS(rs, ms)
	if format == "zone" {
		return writeZone(stdout, plan, name, ttl)
	}
	return writeRoute53(stdout, plan, name, ttl)
}
