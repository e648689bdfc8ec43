// Package devstack starts real Consul, Nomad and Pebble agents on loopback, as
// child processes, for the integration tests and for `make demo`.
//
// Nothing here is a mock: the binaries are the ones `make tools` builds into
// bin/ (Consul v1.14.11, Nomad v1.6.0, Pebble v2.10.3). A Stack is
//
//	one Consul server                    (UI on, the SRE's view)
//	one Consul client agent per Nomad client (two Nomad clients sharing one
//	                                      agent delete each other's checks)
//	one Nomad server
//	N Nomad clients                      (own data dirs and ports, all with
//	                                      host volume "apim-shared" pointing
//	                                      at one shared directory: the stand-in
//	                                      for the guide's NFS mount)
//	optionally Pebble + its challenge test server (ACME)
//
// Start it, use it, stop it:
//
//	st, err := devstack.Start(ctx, devstack.Config{Dir: dir, NomadClients: 3})
//	if err != nil { ... }
//	defer st.Stop()
//	nomad := st.NomadAPI()
//
// Every agent listens on free loopback ports, keeps its logs in Dir/logs, and
// never phones out: CHECKPOINT_DISABLE=1, Nomad's update check off and its
// cloud fingerprinters denied. Tests use package testenv, which ties a Stack to
// t.Cleanup and prints the agents' logs when a test fails.
package devstack
