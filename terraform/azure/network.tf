# One virtual network: the fleet's subnet (scale set and internal load balancer), the
# services' subnet (agent and monitoring VMs), and optionally Azure Bastion's. Outbound
# traffic (packages, Azure APIs) leaves through a NAT gateway; no VM has a public IP
# unless operator_cidr gives the monitoring VM one.

resource "azurerm_virtual_network" "demo" {
  name                = var.name
  location            = azurerm_resource_group.demo.location
  resource_group_name = azurerm_resource_group.demo.name
  address_space       = [var.vnet_cidr]
  tags                = local.tags
}

resource "azurerm_subnet" "fleet" {
  name                            = "fleet"
  resource_group_name             = azurerm_resource_group.demo.name
  virtual_network_name            = azurerm_virtual_network.demo.name
  address_prefixes                = [local.fleet_subnet]
  default_outbound_access_enabled = false
}

resource "azurerm_subnet" "services" {
  name                            = "services"
  resource_group_name             = azurerm_resource_group.demo.name
  virtual_network_name            = azurerm_virtual_network.demo.name
  address_prefixes                = [local.services_subnet]
  default_outbound_access_enabled = false
}

resource "azurerm_subnet" "bastion" {
  #checkov:skip=CKV2_AZURE_31: Azure Bastion's subnet works without a network security group, and one would need Bastion's own long list of rules.
  count = var.enable_bastion ? 1 : 0

  name                 = "AzureBastionSubnet"
  resource_group_name  = azurerm_resource_group.demo.name
  virtual_network_name = azurerm_virtual_network.demo.name
  address_prefixes     = [local.bastion_subnet]
}

resource "azurerm_public_ip" "nat" {
  name                = "${var.name}-nat"
  location            = azurerm_resource_group.demo.location
  resource_group_name = azurerm_resource_group.demo.name
  allocation_method   = "Static"
  sku                 = "Standard"
  tags                = local.tags
}

resource "azurerm_nat_gateway" "demo" {
  name                = var.name
  location            = azurerm_resource_group.demo.location
  resource_group_name = azurerm_resource_group.demo.name
  sku_name            = "Standard"
  tags                = local.tags
}

resource "azurerm_nat_gateway_public_ip_association" "demo" {
  nat_gateway_id       = azurerm_nat_gateway.demo.id
  public_ip_address_id = azurerm_public_ip.nat.id
}

resource "azurerm_subnet_nat_gateway_association" "fleet" {
  subnet_id      = azurerm_subnet.fleet.id
  nat_gateway_id = azurerm_nat_gateway.demo.id
}

resource "azurerm_subnet_nat_gateway_association" "services" {
  subnet_id      = azurerm_subnet.services.id
  nat_gateway_id = azurerm_nat_gateway.demo.id
}

# Application security groups name the roles in the rules below.

resource "azurerm_application_security_group" "fleet" {
  name                = "${var.name}-fleet"
  location            = azurerm_resource_group.demo.location
  resource_group_name = azurerm_resource_group.demo.name
  tags                = local.tags
}

resource "azurerm_application_security_group" "monitor" {
  name                = "${var.name}-monitor"
  location            = azurerm_resource_group.demo.location
  resource_group_name = azurerm_resource_group.demo.name
  tags                = local.tags
}

resource "azurerm_application_security_group" "etcd" {
  count               = var.high_availability ? 1 : 0
  name                = "${var.name}-etcd"
  location            = azurerm_resource_group.demo.location
  resource_group_name = azurerm_resource_group.demo.name
  tags                = local.tags
}

resource "azurerm_application_security_group" "agent" {
  name                = "${var.name}-agent"
  location            = azurerm_resource_group.demo.location
  resource_group_name = azurerm_resource_group.demo.name
  tags                = local.tags
}

# The fleet: HTTP from the load balancer's probe and from the load generator, the
# exporter from Prometheus; nothing else from inside the network.
resource "azurerm_network_security_group" "fleet" {
  name                = "${var.name}-fleet"
  location            = azurerm_resource_group.demo.location
  resource_group_name = azurerm_resource_group.demo.name
  tags                = local.tags

  security_rule {
    name                       = "http-from-load-balancer-probe"
    description                = "Health probes of the load balancer"
    priority                   = 100
    direction                  = "Inbound"
    access                     = "Allow"
    protocol                   = "Tcp"
    source_port_range          = "*"
    destination_port_range     = "80"
    source_address_prefix      = "AzureLoadBalancer"
    destination_address_prefix = "*"
  }

  security_rule {
    name                                       = "http-from-load-generator"
    description                                = "Requests from the load generator, through the internal load balancer"
    priority                                   = 110
    direction                                  = "Inbound"
    access                                     = "Allow"
    protocol                                   = "Tcp"
    source_port_range                          = "*"
    destination_port_range                     = "80"
    source_application_security_group_ids      = [azurerm_application_security_group.monitor.id]
    destination_application_security_group_ids = [azurerm_application_security_group.fleet.id]
  }

  security_rule {
    name                                       = "exporter-from-prometheus"
    description                                = "Request counter scraped by Prometheus"
    priority                                   = 120
    direction                                  = "Inbound"
    access                                     = "Allow"
    protocol                                   = "Tcp"
    source_port_range                          = "*"
    destination_port_range                     = tostring(local.exporter_port)
    source_application_security_group_ids      = [azurerm_application_security_group.monitor.id]
    destination_application_security_group_ids = [azurerm_application_security_group.fleet.id]
  }

  # SSH from Azure Bastion, when it is deployed.
  dynamic "security_rule" {
    for_each = var.enable_bastion ? [1] : []

    content {
      name                       = "ssh-from-bastion"
      description                = "SSH from Azure Bastion"
      priority                   = 210
      direction                  = "Inbound"
      access                     = "Allow"
      protocol                   = "Tcp"
      source_port_range          = "*"
      destination_port_range     = "22"
      source_address_prefix      = local.bastion_subnet
      destination_address_prefix = "VirtualNetwork"
    }
  }

  security_rule {
    name                       = "deny-other-network-traffic"
    description                = "Nothing else from inside the network (overrides AllowVnetInBound)"
    priority                   = 4000
    direction                  = "Inbound"
    access                     = "Deny"
    protocol                   = "*"
    source_port_range          = "*"
    destination_port_range     = "*"
    source_address_prefix      = "VirtualNetwork"
    destination_address_prefix = "*"
  }
}

# The services: the agent's metrics from Prometheus only, Prometheus's API from the agent;
# Prometheus and Grafana from operator_cidr or Bastion when asked for.
resource "azurerm_network_security_group" "services" {
  name                = "${var.name}-services"
  location            = azurerm_resource_group.demo.location
  resource_group_name = azurerm_resource_group.demo.name
  tags                = local.tags

  security_rule {
    name                                       = "agent-metrics-from-prometheus"
    description                                = "Agent metrics and health, scraped by Prometheus only"
    priority                                   = 100
    direction                                  = "Inbound"
    access                                     = "Allow"
    protocol                                   = "Tcp"
    source_port_range                          = "*"
    destination_port_range                     = tostring(local.agent_port)
    source_application_security_group_ids      = [azurerm_application_security_group.monitor.id]
    destination_application_security_group_ids = [azurerm_application_security_group.agent.id]
  }

  security_rule {
    name                                       = "prometheus-from-agent"
    description                                = "Signal queries from the agent"
    priority                                   = 110
    direction                                  = "Inbound"
    access                                     = "Allow"
    protocol                                   = "Tcp"
    source_port_range                          = "*"
    destination_port_range                     = tostring(local.prometheus_port)
    source_application_security_group_ids      = [azurerm_application_security_group.agent.id]
    destination_application_security_group_ids = [azurerm_application_security_group.monitor.id]
  }

  # etcd's clients, with `high_availability`: the agents only.
  dynamic "security_rule" {
    for_each = var.high_availability ? [1] : []

    content {
      name                                       = "etcd-from-agents"
      description                                = "Leases, elections and commands in etcd, from the agents only"
      priority                                   = 120
      direction                                  = "Inbound"
      access                                     = "Allow"
      protocol                                   = "Tcp"
      source_port_range                          = "*"
      destination_port_range                     = tostring(local.etcd_port)
      source_application_security_group_ids      = [azurerm_application_security_group.agent.id]
      destination_application_security_group_ids = [azurerm_application_security_group.etcd[0].id]
    }
  }

  # Prometheus and Grafana from the operator's one address, when operator_cidr gives one.
  dynamic "security_rule" {
    for_each = local.monitor_public_ip ? [var.operator_cidr] : []

    content {
      name                                       = "prometheus-grafana-from-operator"
      description                                = "Prometheus and Grafana from the operator's one address"
      priority                                   = 200
      direction                                  = "Inbound"
      access                                     = "Allow"
      protocol                                   = "Tcp"
      source_port_range                          = "*"
      destination_port_ranges                    = [tostring(local.prometheus_port), tostring(local.grafana_port)]
      source_address_prefix                      = security_rule.value
      destination_application_security_group_ids = [azurerm_application_security_group.monitor.id]
    }
  }

  # SSH and tunnels to Prometheus and Grafana from Azure Bastion, when it is deployed.
  dynamic "security_rule" {
    for_each = var.enable_bastion ? [1] : []

    content {
      name                       = "ssh-and-tunnels-from-bastion"
      description                = "SSH, and tunnels to Prometheus and Grafana, from Azure Bastion"
      priority                   = 210
      direction                  = "Inbound"
      access                     = "Allow"
      protocol                   = "Tcp"
      source_port_range          = "*"
      destination_port_ranges    = ["22", tostring(local.prometheus_port), tostring(local.grafana_port)]
      source_address_prefix      = local.bastion_subnet
      destination_address_prefix = "VirtualNetwork"
    }
  }

  security_rule {
    name                       = "deny-other-network-traffic"
    description                = "Nothing else from inside the network (overrides AllowVnetInBound)"
    priority                   = 4000
    direction                  = "Inbound"
    access                     = "Deny"
    protocol                   = "*"
    source_port_range          = "*"
    destination_port_range     = "*"
    source_address_prefix      = "VirtualNetwork"
    destination_address_prefix = "*"
  }
}

resource "azurerm_subnet_network_security_group_association" "fleet" {
  subnet_id                 = azurerm_subnet.fleet.id
  network_security_group_id = azurerm_network_security_group.fleet.id
}

resource "azurerm_subnet_network_security_group_association" "services" {
  subnet_id                 = azurerm_subnet.services.id
  network_security_group_id = azurerm_network_security_group.services.id
}

resource "azurerm_public_ip" "bastion" {
  count = var.enable_bastion ? 1 : 0

  name                = "${var.name}-bastion"
  location            = azurerm_resource_group.demo.location
  resource_group_name = azurerm_resource_group.demo.name
  allocation_method   = "Static"
  sku                 = "Standard"
  tags                = local.tags
}

resource "azurerm_bastion_host" "demo" {
  count = var.enable_bastion ? 1 : 0

  name                = var.name
  location            = azurerm_resource_group.demo.location
  resource_group_name = azurerm_resource_group.demo.name
  sku                 = "Standard"
  tunneling_enabled   = true
  tags                = local.tags

  ip_configuration {
    name                 = "bastion"
    subnet_id            = azurerm_subnet.bastion[0].id
    public_ip_address_id = azurerm_public_ip.bastion[0].id
  }
}
