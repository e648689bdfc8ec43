// Package e2e holds end-to-end tests that cross every stage: the spec
// becomes a job on a real Nomad cluster, the gateways register in a real
// Consul, and an SRE looks at them where SREs look (the Consul UI, in a real
// headless Chromium).
package e2e
