package gatewaysim

import (
	_ "embed"
	"os"
	"path/filepath"
)

// SampleAPI is a Synapse API artifact (the WSO2 PizzaShack sample): name
// PizzaShackAPI, context /pizzashack, version 1.0.0, resources GET /menu,
// POST /order and GET /order/{orderId}. Write it as
// <home>/repository/deployment/server/synapse-configs/default/api/PizzaShackAPI.xml
// and a running simulator serves e.g. GET /pizzashack/1.0.0/menu.
//
//go:embed testdata/PizzaShackAPI.xml
var SampleAPI []byte

// SampleAPIFile is the file name to give SampleAPI in the artifact directory.
const SampleAPIFile = "PizzaShackAPI.xml"

// WriteSampleAPI puts the sample API into apiDir (made if missing): the
// artifact a gateway deploys from the shared directory.
func WriteSampleAPI(apiDir string) error {
	if err := os.MkdirAll(apiDir, 0o755); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(apiDir, SampleAPIFile), SampleAPI, 0o644)
}
