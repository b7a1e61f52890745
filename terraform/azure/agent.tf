# The fleetscale agent on its own VM: a hardened systemd service (examples/fleetscale.service)
# whose config is rendered here, authenticated as the VM's user-assigned managed identity.
# With `high_availability`, two such VMs with the same config coordinate through etcd
# (etcd.tf): each names itself by its host name.

locals {
  agent_config_vars = {
    tick               = var.agent_tick
    agent_port         = local.agent_port
    fleet_name         = var.fleet_name
    boot_delay         = var.boot_delay
    subscription_id    = data.azurerm_subscription.current.subscription_id
    resource_group     = azurerm_resource_group.demo.name
    scale_set          = azurerm_linux_virtual_machine_scale_set.fleet.name
    identity_client_id = azurerm_user_assigned_identity.agent.client_id
    prometheus_url     = "http://${local.monitor_ip}:${local.prometheus_port}"
    per_instance_rps   = var.instance_capacity_rps
    max_unserved       = var.max_unserved
    min_instances      = var.min_instances
    max_instances      = var.max_instances
    max_step_up        = var.max_step_up
    coordination       = var.high_availability ? local.coordination_section : ""
  }

  coordination_vars = {
    etcd_endpoint = "http://${local.etcd_ip}:${local.etcd_port}"
  }
  coordination_section = templatefile("${path.module}/../shared/coordination.toml.tftpl", local.coordination_vars)

  agent_config = templatefile("${path.module}/templates/fleetscale.toml.tftpl", local.agent_config_vars)

  agent_cloud_init_vars = {
    config         = indent(6, local.agent_config)
    unit           = indent(6, file("${path.module}/../../examples/fleetscale.service"))
    install_script = indent(6, file("${path.module}/../shared/fleetscale-install.sh"))
    binary_url     = var.agent_binary_url
    binary_sha256  = var.agent_binary_sha256
    git_url        = var.agent_git_url
    git_branch     = var.agent_git_branch
    cargo_features = var.high_availability ? "azure,etcd" : "azure"
    platform_setup = "true"
  }
}

resource "azurerm_network_interface" "agent" {
  count               = local.agent_count
  name                = var.high_availability ? "${var.name}-agent-${count.index}" : "${var.name}-agent"
  location            = azurerm_resource_group.demo.location
  resource_group_name = azurerm_resource_group.demo.name
  tags                = local.tags

  ip_configuration {
    name                          = "agent"
    subnet_id                     = azurerm_subnet.services.id
    private_ip_address_allocation = "Static"
    private_ip_address            = local.agent_ips[count.index]
  }
}

resource "azurerm_network_interface_application_security_group_association" "agent" {
  count                         = local.agent_count
  network_interface_id          = azurerm_network_interface.agent[count.index].id
  application_security_group_id = azurerm_application_security_group.agent.id
}

resource "azurerm_linux_virtual_machine" "agent" {
  #checkov:skip=CKV_AZURE_50: the VM agent's run-command is how the README reads the agent's journal and status without SSH.
  count = local.agent_count
  name  = var.high_availability ? "${var.name}-agent-${count.index}" : "${var.name}-agent"
  # The host name is the agent's member name when coordinating.
  computer_name                   = var.high_availability ? "agent-${count.index}" : "agent"
  location                        = azurerm_resource_group.demo.location
  resource_group_name             = azurerm_resource_group.demo.name
  size                            = var.agent_vm_size
  zone                            = var.zones[count.index % length(var.zones)]
  admin_username                  = local.admin_username
  disable_password_authentication = true
  encryption_at_host_enabled      = var.encryption_at_host
  allow_extension_operations      = true
  network_interface_ids           = [azurerm_network_interface.agent[count.index].id]
  custom_data                     = base64gzip(templatefile("${path.module}/../shared/cloud-init/agent.yaml.tftpl", local.agent_cloud_init_vars))
  tags                            = local.tags

  admin_ssh_key {
    username   = local.admin_username
    public_key = local.admin_ssh_key
  }

  source_image_reference {
    publisher = local.debian_image.publisher
    offer     = local.debian_image.offer
    sku       = local.debian_image.sku
    version   = local.debian_image.version
  }

  os_disk {
    caching              = "ReadWrite"
    storage_account_type = var.os_disk_type
  }

  identity {
    type         = "UserAssigned"
    identity_ids = [azurerm_user_assigned_identity.agent.id]
  }

  boot_diagnostics {}

  # The agent starts scaling at boot: its roles first. Destroyed before the scale set.
  depends_on = [
    azurerm_role_assignment.agent_scale_set,
    azurerm_role_assignment.agent_network_join,
    azurerm_subnet_nat_gateway_association.services,
    azurerm_subnet_network_security_group_association.services,
  ]
}

# The single agent of earlier versions is the first of the count.
moved {
  from = azurerm_network_interface.agent
  to   = azurerm_network_interface.agent[0]
}

moved {
  from = azurerm_network_interface_application_security_group_association.agent
  to   = azurerm_network_interface_application_security_group_association.agent[0]
}

moved {
  from = azurerm_linux_virtual_machine.agent
  to   = azurerm_linux_virtual_machine.agent[0]
}
