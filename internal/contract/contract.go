// Package contract is what `gwnomad deploy` and `gwnomad lb` agree on in
// Consul, and nothing else: the meta keys and tags of a gateway's service
// instance (package jobs writes them; lb/balancer and scheduler read
// them) and of a balancer's own registration (package lb writes it;
// scheduler reads it for `status` and `restart`). A key renamed here is
// renamed on both sides.
package contract

// A gateway's service instance.
const (
	// MetaPortPrefix + a port label is the meta key of the instance's host
	// port of that label: "port_passthru_https" = "24567". A route's port
	// names a label (lb.toml [[routes]] port).
	MetaPortPrefix = "port_"
	// MetaKVPrefix is the Consul KV folder the instance's deployment.toml
	// was rendered from: the configuration version it runs.
	MetaKVPrefix = "kv_prefix"
	// MetaAllocID is the Nomad allocation the instance belongs to.
	MetaAllocID = "alloc_id"
	// TagGwnomad is on every instance gwnomad deploys; TagCanary on the
	// canaries of a rollout (Nomad's canary_tags).
	TagGwnomad = "gwnomad"
	TagCanary  = "canary"
)

// A load balancer's registration.
const (
	// LBService is the service the balancers register as by default
	// (lb.toml consul.service_name).
	LBService = "gwnomad-lb"
	// MetaAdmin is the balancer's admin address (/routes, /metrics,
	// /healthz).
	MetaAdmin = "admin"
	// MetaServices lists, comma-separated, the services its routes send
	// to.
	MetaServices = "services"
	// TagLB is the tag of the balancer's registration.
	TagLB = "gwnomad"
)
