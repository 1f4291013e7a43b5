// Command kstatus prints what sigs.k8s.io/cli-utils/pkg/kstatus (the library Flux, Argo CD's and
// kubectl's waits build on) computes for Kubernetes objects: one JSON line per object read from stdin
// (a JSON object, or a List with items), {"name", "status", "message"}.
package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"sigs.k8s.io/cli-utils/pkg/kstatus/status"
)

type verdict struct {
	Name    string `json:"name"`
	Status  string `json:"status"`
	Message string `json:"message"`
}

func main() {
	raw, err := io.ReadAll(os.Stdin)
	if err != nil {
		fail(err)
	}
	// The apimachinery decoder keeps integers as int64, as kstatus's accessors require.
	decoded, err := runtime.Decode(unstructured.UnstructuredJSONScheme, raw)
	if err != nil {
		fail(err)
	}
	var objects []unstructured.Unstructured
	switch doc := decoded.(type) {
	case *unstructured.UnstructuredList:
		objects = doc.Items
	case *unstructured.Unstructured:
		objects = []unstructured.Unstructured{*doc}
	default:
		fail(fmt.Errorf("unexpected %T", decoded))
	}
	out := json.NewEncoder(os.Stdout)
	for i := range objects {
		result, err := status.Compute(&objects[i])
		if err != nil {
			fail(err)
		}
		name := objects[i].GetNamespace() + "/" + objects[i].GetName()
		if err := out.Encode(verdict{name, result.Status.String(), result.Message}); err != nil {
			fail(err)
		}
	}
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "kstatus:", err)
	os.Exit(2)
}
