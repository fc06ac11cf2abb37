//! Wi-Fi signal through the WLAN API: each connected wireless interface's
//! signal quality (0 to 100) and RSSI. No WLAN service or no wireless
//! adapter is an empty list, not an error: most desks are wired.

use std::ptr::{null, null_mut};

use vitals_proto::domain::WifiInfo;
use windows_sys::Win32::Foundation::HANDLE;
use windows_sys::Win32::NetworkManagement::WiFi::{
    WLAN_CONNECTION_ATTRIBUTES, WLAN_INTERFACE_INFO_LIST, WlanCloseHandle, WlanEnumInterfaces,
    WlanFreeMemory, WlanOpenHandle, WlanQueryInterface, wlan_interface_state_connected,
    wlan_intf_opcode_current_connection, wlan_intf_opcode_rssi,
};

use super::string_in;

struct Client(HANDLE);

impl Drop for Client {
    fn drop(&mut self) {
        // SAFETY: a handle from WlanOpenHandle, closed once.
        unsafe { WlanCloseHandle(self.0, null()) };
    }
}

/// Queries one opcode into a value the API allocated; `None` on failure.
fn query<T: Copy>(client: &Client, guid: &windows_sys::core::GUID, opcode: i32) -> Option<T> {
    let mut size = 0;
    let mut data = null_mut();
    // SAFETY: valid handle and GUID; `data` receives an allocation of
    // `size` bytes, freed below.
    let code = unsafe {
        WlanQueryInterface(
            client.0,
            guid,
            opcode,
            null(),
            &mut size,
            &mut data,
            null_mut(),
        )
    };
    if code != 0 || data.is_null() {
        return None;
    }
    let value = (size as usize >= std::mem::size_of::<T>()).then(|| {
        // SAFETY: at least one T was returned.
        unsafe { *(data as *const T) }
    });
    // SAFETY: `data` came from WlanQueryInterface.
    unsafe { WlanFreeMemory(data) };
    value
}

pub fn signals() -> Vec<WifiInfo> {
    let mut version = 0;
    let mut handle: HANDLE = null_mut();
    // SAFETY: client version 2 (Vista and later); outputs are valid.
    if unsafe { WlanOpenHandle(2, null(), &mut version, &mut handle) } != 0 {
        return Vec::new();
    }
    let client = Client(handle);
    let mut list: *mut WLAN_INTERFACE_INFO_LIST = null_mut();
    // SAFETY: valid handle; `list` receives an allocation freed below.
    if unsafe { WlanEnumInterfaces(client.0, null(), &mut list) } != 0 || list.is_null() {
        return Vec::new();
    }
    // SAFETY: the list holds `dwNumberOfItems` entries inline.
    let items = unsafe { super::records((*list).InterfaceInfo.as_ptr(), (*list).dwNumberOfItems) };
    let mut out = Vec::new();
    for i in items
        .iter()
        .filter(|i| i.isState == wlan_interface_state_connected)
    {
        let Some(conn) = query::<WLAN_CONNECTION_ATTRIBUTES>(
            &client,
            &i.InterfaceGuid,
            wlan_intf_opcode_current_connection,
        ) else {
            continue;
        };
        let quality = conn.wlanAssociationAttributes.wlanSignalQuality as f32;
        let rssi = query::<i32>(&client, &i.InterfaceGuid, wlan_intf_opcode_rssi);
        out.push(WifiInfo {
            interface: string_in(&i.strInterfaceDescription),
            link_quality: quality,
            // Windows' own mapping where the driver gives no RSSI: 0 % is
            // -100 dBm, 100 % is -50 dBm.
            signal_dbm: rssi.map_or(quality / 2.0 - 100.0, |r| r as f32),
        });
    }
    // SAFETY: `list` came from WlanEnumInterfaces.
    unsafe { WlanFreeMemory(list.cast()) };
    out
}
