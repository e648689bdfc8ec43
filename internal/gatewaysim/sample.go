package gatewaysim

import _ "embed"

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
