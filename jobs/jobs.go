package jobs

import (
	"bytes"
	"encoding/json"
	"fmt"
	"path"
	"time"

	"github.com/hashicorp/nomad/api"

	"github.com/gwnomad/gwnomad/internal/contract"
	"github.com/gwnomad/gwnomad/spec"
	"github.com/gwnomad/gwnomad/templates"
)

// Names in the job.
const (
	GroupName  = "gateway" // the one task group
	TaskName   = "gateway" // its one task
	VolumeName = "shared"  // the group's volume request for [shared_volume]

	// MetaConfigChecksum is the job meta key holding templates.Checksum: a
	// [config] or template change changes it, so the change is a new job
	// version rolled out under the update block.
	MetaConfigChecksum = "gwnomad.config_checksum"
	// MetaKVPrefix is the job meta key holding the Consul KV folder of the
	// version's configuration (templates.KVPrefix), which its template reads.
	MetaKVPrefix = "gwnomad.kv_prefix"

	// LivenessCheckName and ReadinessCheckName are the Consul check names.
	LivenessCheckName  = "WSO2 gateway liveness (" + LivenessPath + ")"
	ReadinessCheckName = "WSO2 gateway readiness (" + ReadinessPath + ")"
	LivenessPath       = "/services/Version"
	ReadinessPath      = "/api/am/gateway/v2/server-startup-healthcheck"

	// TagGwnomad is on every gateway instance; TagCanary on canaries.
	TagGwnomad = contract.TagGwnomad
	TagCanary  = contract.TagCanary
)

// ClusterTag is the tag of every instance of a cluster: "cluster=<name>".
func ClusterTag(s *spec.Spec) string { return "cluster=" + s.Cluster.Name }

// ServicePortLabel is the port of the registered service (its Port in
// Consul): API traffic over TLS. Every port is in the meta as well.
const ServicePortLabel = templates.LabelPassthruHTTPS

// MetaPortPrefix + label is the service meta key of each port
// ("port_passthru_https" = "24567"): the load balancer reads these.
const MetaPortPrefix = contract.MetaPortPrefix

// Labels returns the port labels of the job, in order.
func Labels(s *spec.Spec) []string {
	l := []string{templates.LabelHTTP, templates.LabelHTTPS, templates.LabelPassthruHTTP, templates.LabelPassthruHTTPS}
	if s.Clustering.Enabled {
		l = append(l, templates.LabelClustering)
	}
	return l
}

// ConfigPath is where deployment.toml is rendered: inside the exec chroot
// at <home>/repository/conf/deployment.toml (Nomad joins an absolute
// destination to the task directory, the chroot's root), or in the task's
// local/ directory for docker, bind-mounted at that path in the container.
func ConfigPath(s *spec.Spec) string {
	if s.Gateway.Driver == spec.DriverDocker {
		return "local/deployment.toml"
	}
	return path.Join(s.Gateway.Home, "repository/conf/deployment.toml")
}

// Build turns a validated spec into the Nomad job. It does no I/O.
func Build(s *spec.Spec) (*api.Job, error) {
	tmpl, err := templates.Template(s)
	if err != nil {
		return nil, fmt.Errorf("building job: %w", err)
	}
	sum, err := templates.Checksum(s)
	if err != nil {
		return nil, fmt.Errorf("building job: %w", err)
	}
	prefix, err := templates.KVPrefix(s)
	if err != nil {
		return nil, fmt.Errorf("building job: %w", err)
	}
	g := s.Gateway

	job := api.NewServiceJob(s.Cluster.Name, s.Cluster.Name, s.Cluster.Region, 50)
	job.Namespace = ptr(s.Cluster.Namespace)
	job.Datacenters = append([]string{}, s.Cluster.Datacenters...)
	job.Meta = map[string]string{
		MetaConfigChecksum: sum,
		MetaKVPrefix:       prefix,
	}

	net := &api.NetworkResource{Mode: "host"}
	for _, label := range Labels(s) {
		p := portOf(s, label)
		if p == 0 {
			net.DynamicPorts = append(net.DynamicPorts, api.Port{Label: label})
		} else {
			net.ReservedPorts = append(net.ReservedPorts, api.Port{Label: label, Value: p + g.Offset})
		}
	}

	tg := api.NewTaskGroup(GroupName, g.Count)
	tg.Constraints = []*api.Constraint{api.NewConstraint("", "distinct_hosts", "true")}
	tg.Networks = []*api.NetworkResource{net}
	tg.Volumes = map[string]*api.VolumeRequest{VolumeName: {
		Name: VolumeName, Type: "host", Source: s.SharedVolume.Name, ReadOnly: s.SharedVolume.ReadOnly,
	}}
	// A gateway is long-running: restart in place a few times, then let
	// the scheduler place it elsewhere, forever, backing off.
	tg.RestartPolicy = &api.RestartPolicy{
		Attempts: ptr(3), Interval: ptr(10 * time.Minute), Delay: ptr(15 * time.Second), Mode: ptr("delay"),
	}
	tg.ReschedulePolicy = &api.ReschedulePolicy{
		Unlimited: ptr(true), Delay: ptr(30 * time.Second), DelayFunction: ptr("exponential"), MaxDelay: ptr(10 * time.Minute),
	}
	u := s.Update
	tg.Update = &api.UpdateStrategy{
		MaxParallel:      ptr(u.MaxParallel),
		HealthCheck:      ptr("checks"), // readiness gates the rollout
		MinHealthyTime:   ptr(u.MinHealthyTime.Duration),
		HealthyDeadline:  ptr(u.HealthyDeadline.Duration),
		ProgressDeadline: ptr(u.ProgressDeadline.Duration),
		AutoRevert:       ptr(u.AutoRevert),
		AutoPromote:      ptr(u.AutoPromote),
		Canary:           ptr(u.Canary),
	}

	task := api.NewTask(TaskName, g.Driver)
	task.Config = driverConfig(s)
	task.Resources = &api.Resources{CPU: ptr(g.CPU), MemoryMB: ptr(g.Memory)}
	task.VolumeMounts = []*api.VolumeMount{{
		Volume:      ptr(VolumeName),
		Destination: ptr(path.Join(g.Home, s.SharedVolume.Mount)),
		ReadOnly:    ptr(s.SharedVolume.ReadOnly),
	}}
	task.Templates = []*api.Template{{
		EmbeddedTmpl: ptr(tmpl),
		DestPath:     ptr(ConfigPath(s)),
		// Never "restart": a KV change would restart every node at once.
		// A config change rolls out as a new job version (MetaConfigChecksum).
		ChangeMode: ptr("noop"),
		Perms:      ptr("0644"),
	}}
	task.Services = []*api.Service{service(s, sum, prefix)}
	task.ShutdownDelay = g.ShutdownDelay.Duration
	task.KillTimeout = ptr(g.KillTimeout.Duration)
	task.KillSignal = "SIGTERM"

	tg.Tasks = []*api.Task{task}
	job.TaskGroups = []*api.TaskGroup{tg}
	return job, nil
}

func portOf(s *spec.Spec, label string) int {
	p := s.Gateway.Ports
	switch label {
	case templates.LabelHTTP:
		return p.HTTP
	case templates.LabelHTTPS:
		return p.HTTPS
	case templates.LabelPassthruHTTP:
		return p.PassthruHTTP
	case templates.LabelPassthruHTTPS:
		return p.PassthruHTTPS
	case templates.LabelClustering:
		return s.Clustering.Port
	}
	return 0
}

// driverConfig: the gateway binds the host's ports itself (exec; docker
// with network_mode "host"), so the address Consul registers is the one it
// listens on and Hazelcast members advertise reachable addresses.
func driverConfig(s *spec.Spec) map[string]any {
	g := s.Gateway
	args := append([]string{}, g.Args...)
	if g.Driver == spec.DriverExec {
		return map[string]any{"command": g.Command, "args": args}
	}
	c := map[string]any{
		"image":        g.Image,
		"network_mode": "host",
		"args":         args,
		"mount": []map[string]any{{
			"type":     "bind",
			"source":   ConfigPath(s),
			"target":   path.Join(g.Home, "repository/conf/deployment.toml"),
			"readonly": true,
		}},
	}
	if g.Command != "" {
		c["command"] = g.Command
	}
	return c
}

func service(s *spec.Spec, checksum, kvPrefix string) *api.Service {
	g := s.Gateway
	meta := map[string]string{
		"cluster":             s.Cluster.Name,
		"node":                "${node.unique.name}",
		contract.MetaAllocID:  "${NOMAD_ALLOC_ID}",
		"hostname":            g.Hostname,
		"product":             "WSO2 API Manager gateway",
		"product_version":     g.ProductVersion,
		"config_checksum":     checksum[:12],
		contract.MetaKVPrefix: kvPrefix,
	}
	for _, label := range Labels(s) {
		meta[MetaPortPrefix+label] = "${NOMAD_HOST_PORT_" + label + "}"
	}
	canaryMeta := map[string]string{contract.TagCanary: "true"}
	for k, v := range meta {
		canaryMeta[k] = v
	}
	tags := []string{TagGwnomad, ClusterTag(s), "wso2am-" + g.ProductVersion}
	var restart *api.CheckRestart
	if g.Checks.RestartLimit > 0 {
		restart = &api.CheckRestart{Limit: g.Checks.RestartLimit, Grace: ptr(g.Checks.RestartGrace.Duration)}
	}
	return &api.Service{
		Name:       g.Service,
		PortLabel:  ServicePortLabel,
		Provider:   "consul",
		Tags:       tags,
		CanaryTags: append(append([]string{}, tags...), TagCanary),
		Meta:       meta,
		CanaryMeta: canaryMeta,
		Checks: []api.ServiceCheck{
			{
				Name: LivenessCheckName, Type: "http", Protocol: "http", Path: LivenessPath,
				PortLabel: templates.LabelHTTP, Method: "GET",
				Interval: g.Checks.Interval.Duration, Timeout: g.Checks.Timeout.Duration,
				CheckRestart: restart,
			},
			{
				Name: ReadinessCheckName, Type: "http", Protocol: "https", Path: ReadinessPath,
				PortLabel: templates.LabelHTTPS, Method: "GET", TLSSkipVerify: g.Checks.TLSSkipVerify,
				Interval: g.Checks.Interval.Duration, Timeout: g.Checks.Timeout.Duration,
			},
		},
	}
}

// JSON is the job as Nomad's API JSON, {"Job": ...}, what `nomad job run
// -json` and the /v1/jobs endpoint accept. Indented, stable.
func JSON(job *api.Job) ([]byte, error) {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetIndent("", "  ")
	enc.SetEscapeHTML(false)
	if err := enc.Encode(struct{ Job *api.Job }{job}); err != nil {
		return nil, fmt.Errorf("encoding job JSON: %w", err)
	}
	return b.Bytes(), nil
}

func ptr[T any](v T) *T { return &v }
