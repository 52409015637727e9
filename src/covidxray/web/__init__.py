"""covidxray.web"""
