// Command breakdir is run by the resilience suite inside one gateway task's
// mount namespace (nsenter -m, copied into the task's root first): it makes
// that task's view of the shared artifact directory unreadable, or restores
// it, without touching the shared directory itself or any other task.
//
//	breakdir break   <dir>   # tmpfs over <dir>'s parent holding a *file* named <dir>: ReadDir fails (ENOTDIR)
//	breakdir restore <dir>   # unmount it again
//
// It is static (CGO off) because the task's chroot holds nothing else.
package main

import (
	"fmt"
	"os"
	"path/filepath"
	"syscall"
)

func main() {
	if len(os.Args) != 3 {
		fmt.Fprintln(os.Stderr, "usage: breakdir break|restore <dir>")
		os.Exit(2)
	}
	dir := filepath.Clean(os.Args[2])
	parent := filepath.Dir(dir)
	var err error
	switch os.Args[1] {
	case "break":
		// Only this mount namespace: keep the new mount private.
		if err = syscall.Mount("tmpfs", parent, "tmpfs", 0, "size=1m,mode=0755"); err == nil {
			_ = syscall.Mount("", parent, "", syscall.MS_PRIVATE, "")
			err = os.WriteFile(dir, []byte("unreadable on purpose: resilience suite\n"), 0o644)
		}
	case "restore":
		err = syscall.Unmount(parent, 0)
	default:
		err = fmt.Errorf("unknown action %q", os.Args[1])
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "breakdir:", err)
		os.Exit(1)
	}
}
