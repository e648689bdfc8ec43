package devstack

import "testing"

// TestFreePortsNeverRepeat: ports handed out once are never handed out again
// in this process, even though the kernel would give them again at once.
func TestFreePortsNeverRepeat(t *testing.T) {
	seen := map[int]bool{}
	for range 200 {
		ps, err := FreePorts(3)
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range ps {
			if seen[p] {
				t.Fatalf("port %d handed out twice", p)
			}
			seen[p] = true
		}
	}
	p, err := FreeUDPTCPPort()
	if err != nil {
		t.Fatal(err)
	}
	if seen[p] {
		t.Fatalf("dns port %d handed out twice", p)
	}
}
