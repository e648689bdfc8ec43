module github.com/gwnomad/gwnomad/tools/vulndb

go 1.26
