terraform {
  required_version = ">= 1.5"

  required_providers {
    azurerm = {
      source  = "hashicorp/azurerm"
      version = "~> 4.20"
    }
    tls = {
      source  = "hashicorp/tls"
      version = "~> 4.0"
    }
  }
}

# The subscription comes from ARM_SUBSCRIPTION_ID (or the Azure CLI's current one).
provider "azurerm" {
  features {
    resource_group {
      # The fleet's VMs are children of the scale set; nothing else should be left.
      prevent_deletion_if_contains_resources = true
    }
  }
}
