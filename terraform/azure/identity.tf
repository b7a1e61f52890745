# The agent's identity: a user-assigned managed identity on its VM, holding a custom role
# on the scale set alone, with the actions the adapter calls (read the scale set and its
# VMs, change the capacity, delete instances) and the permissions read with which
# `fleetscale check` proves them; and a second role on the resource group with the one
# read Azure checks there: the status of the operations a grow or shrink starts. Its URL
# is at subscription scope (/subscriptions/{id}/providers/Microsoft.Compute/locations/
# {region}/operations/{id}), outside the scale set: "To track the status of an
# asynchronous operation, you need sufficient permission at the resource group level"
# (Microsoft, "Track asynchronous Azure operations"). Without it the adapter follows
# grows and shrinks by the scale set's provisioning state, and `fleetscale check` says so.
resource "azurerm_user_assigned_identity" "agent" {
  name                = "${var.name}-agent"
  location            = azurerm_resource_group.demo.location
  resource_group_name = azurerm_resource_group.demo.name
  tags                = local.tags
}

# Role names are unique in the tenant: the subscription and resource group make them so.
resource "azurerm_role_definition" "scale_set_operator" {
  name        = "fleetscale scale set operator (${data.azurerm_subscription.current.subscription_id}/${azurerm_resource_group.demo.name})"
  scope       = azurerm_resource_group.demo.id
  description = "Read, resize and remove instances of a VM scale set (fleetscale agent)."

  permissions {
    actions = [
      "Microsoft.Compute/virtualMachineScaleSets/read",
      "Microsoft.Compute/virtualMachineScaleSets/write",
      "Microsoft.Compute/virtualMachineScaleSets/delete/action",
      "Microsoft.Compute/virtualMachineScaleSets/virtualMachines/read",
      # A drain's mark on a VM, and its leaving the load balancer's backend pool.
      "Microsoft.Compute/virtualMachineScaleSets/virtualMachines/write",
      "Microsoft.Authorization/permissions/read",
    ]
    not_actions = []
  }

  assignable_scopes = [azurerm_resource_group.demo.id]
}

# Growing the scale set creates VMs whose network interfaces join the fleet's subnet, the
# load balancer's backend pool and the fleet's application security group: Azure checks
# the caller's right to join each of them.
resource "azurerm_role_definition" "fleet_network_join" {
  name        = "fleetscale fleet network join (${data.azurerm_subscription.current.subscription_id}/${azurerm_resource_group.demo.name})"
  scope       = azurerm_resource_group.demo.id
  description = "Let new scale set instances join the fleet's subnet, load balancer pool and application security group (fleetscale agent)."

  permissions {
    actions = [
      "Microsoft.Network/virtualNetworks/subnets/join/action",
      "Microsoft.Network/loadBalancers/backendAddressPools/join/action",
      "Microsoft.Network/applicationSecurityGroups/joinIpConfiguration/action",
    ]
    not_actions = []
  }

  assignable_scopes = [azurerm_resource_group.demo.id]
}

resource "azurerm_role_definition" "operation_status_reader" {
  name        = "fleetscale operation status reader (${data.azurerm_subscription.current.subscription_id}/${azurerm_resource_group.demo.name})"
  scope       = azurerm_resource_group.demo.id
  description = "Read the status of Compute's long-running operations, to follow scale set changes to their end (fleetscale agent)."

  permissions {
    actions     = ["Microsoft.Compute/locations/operations/read"]
    not_actions = []
  }

  assignable_scopes = [azurerm_resource_group.demo.id]
}

resource "azurerm_role_assignment" "agent_operation_status" {
  scope              = azurerm_resource_group.demo.id
  role_definition_id = azurerm_role_definition.operation_status_reader.role_definition_resource_id
  principal_id       = azurerm_user_assigned_identity.agent.principal_id
  principal_type     = "ServicePrincipal"
  description        = "fleetscale agent follows the ${var.fleet_name} fleet's scale operations"
}

resource "azurerm_role_assignment" "agent_scale_set" {
  scope              = azurerm_linux_virtual_machine_scale_set.fleet.id
  role_definition_id = azurerm_role_definition.scale_set_operator.role_definition_resource_id
  principal_id       = azurerm_user_assigned_identity.agent.principal_id
  principal_type     = "ServicePrincipal"
  description        = "fleetscale agent scales the ${var.fleet_name} fleet"
}

resource "azurerm_role_assignment" "agent_network_join" {
  for_each = {
    subnet        = azurerm_subnet.fleet.id
    load_balancer = azurerm_lb.fleet.id
    fleet_asg     = azurerm_application_security_group.fleet.id
  }

  scope              = each.value
  role_definition_id = azurerm_role_definition.fleet_network_join.role_definition_resource_id
  principal_id       = azurerm_user_assigned_identity.agent.principal_id
  principal_type     = "ServicePrincipal"
  description        = "fleetscale agent: new ${var.fleet_name} instances join the ${each.key}"
}

# Prometheus's identity: the monitoring VM's system-assigned identity reads the resource
# group for Azure service discovery.
resource "azurerm_role_assignment" "monitor_reader" {
  scope                = azurerm_resource_group.demo.id
  role_definition_name = "Reader"
  principal_id         = azurerm_linux_virtual_machine.monitor.identity[0].principal_id
  principal_type       = "ServicePrincipal"
  description          = "Prometheus discovers the fleet's instances"
}
