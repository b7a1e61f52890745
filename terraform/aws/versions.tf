terraform {
  required_version = ">= 1.5"

  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = "~> 5.80"
    }
  }
}

provider "aws" {
  region = var.region

  default_tags {
    tags = merge(var.tags, {
      "fleetscale:demo" = var.name
    })
  }

  # fleetscale keeps its last grow on the fleet's group as this tag; it is not
  # Terraform's to remove.
  ignore_tags {
    keys = ["fleetscale:grow"]
  }
}
