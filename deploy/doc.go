// Package deploy holds no code: only the production examples of this folder
// (see README.md) and the test that keeps them valid. Each file is read by the
// tool that would read it in production: Nomad's job parser and config
// validator, Consul's config validator, the ACL policy endpoints of real
// agents with ACLs on, gwnomad's spec parser and lb.toml loader.
package deploy
